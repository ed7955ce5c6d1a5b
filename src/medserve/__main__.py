from medserve.faces.cli import app

app()
