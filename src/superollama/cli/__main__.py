from superollama.cli.main import main

main()
