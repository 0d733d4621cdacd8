from codevm.cli import main

main()
