from nanobias.cli import main

main()
