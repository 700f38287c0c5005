"""PostgreSQL access shared by the services: engine factory, migrations and the schema check."""
