"""The `saev` command line: parses flags into stage configs, calls the stages, prints what they return."""
