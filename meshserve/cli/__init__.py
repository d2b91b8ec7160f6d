"""The `meshserve` command line."""
