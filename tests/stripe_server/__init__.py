"""A strict local Stripe-protocol server for tests (Stripe's cloud is not reachable from CI)."""

from tests.stripe_server.server import Faults, StripeTestServer, sign_webhook

__all__ = ["Faults", "StripeTestServer", "sign_webhook"]
