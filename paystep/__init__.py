"""The paystep command line: deploy, pay, the local stack and the demo."""
