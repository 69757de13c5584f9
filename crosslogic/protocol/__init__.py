"""OpenAI wire protocol: request validation at the edge and the shapes we answer with."""
