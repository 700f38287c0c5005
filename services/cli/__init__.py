"""`python -m services.cli`: command-line clients of the HTTP API, which hold no credentials
of their own: every call carries an API key, so scopes and the audit log apply as they do
to any other caller."""
