"""Training recipes: run by hand (they need training-time extras such as torch), never imported
by the server. Each writes the artifact it produced and says how it was checked."""
