"""The local doubles of AWS and Stripe, and the stack that runs them on loopback.

Used by `paystep dev` / `paystep demo`, the tests and the benchmarks; dev tooling,
kept out of the production image.
"""
