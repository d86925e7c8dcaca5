"""terminal: the keyboard and the dashboard — TTY handling (`tty`), key reading, the rich
dashboard and the layout of one frame.

May import `runtime` and what lies below it; never `web`, and nothing imports it but the CLI
(`__main__`).
"""
