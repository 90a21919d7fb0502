from saev_core.cli import app

app(prog_name="saev")
