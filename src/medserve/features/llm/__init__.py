"""Foundation models as a service: generative (GGUF through llama.cpp) and embedding models
behind an OpenAI-compatible API, with PHI policies, budgets and the audit trail."""
