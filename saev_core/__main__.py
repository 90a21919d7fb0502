from saev_core.cli.app import app

app(prog_name="saev")
