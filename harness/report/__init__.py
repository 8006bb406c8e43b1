"""What a run leaves for people and CI: text for terminals, JUnit properties, the HTML page.

Everything here reads finished results (`RunResult`, or result.json + records.jsonl in a run
directory), so `hotadd report RUN_DIR` regenerates exactly what the run wrote.
"""
