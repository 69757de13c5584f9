"""The Responses API's state at the ingress: stored responses, ids and conversation history."""
