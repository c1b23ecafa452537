from fa2bench.cli import app

if __name__ == "__main__":  # a spawned worker process imports this module too: it must not run the CLI
    app()
