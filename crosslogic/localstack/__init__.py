"""Running the whole stack on one machine: a local Ray head, `serve deploy`, readiness waits."""
