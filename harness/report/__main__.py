from harness.report.cli import main

main()
