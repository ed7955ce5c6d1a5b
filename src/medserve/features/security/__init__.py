"""Security: authentication, permissions, audit chain, PHI de-identification, encryption."""
