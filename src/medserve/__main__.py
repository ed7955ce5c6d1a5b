from medserve.cli import app

app()
