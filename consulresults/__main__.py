from consulresults.cli import main

main()
