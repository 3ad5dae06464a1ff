"""The owner's page: sections rendered on the server, pushed live over Server-Sent Events."""
