from sqlstore.cli import app

app(prog_name="sqlstore")
