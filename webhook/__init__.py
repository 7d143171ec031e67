"""The Stripe webhook service: signed PaymentIntent events resume waiting executions."""
