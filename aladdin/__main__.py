from aladdin.cli import main

main()
