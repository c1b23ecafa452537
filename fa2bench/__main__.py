from fa2bench.cli import app

app()
