"""Post-run analysis: records -> per-request metrics -> SLO attainment, goodput, reports."""
