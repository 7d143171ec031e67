"""The contract between Step Functions and the paystep services.

The ASL definition, the models of the execution input, the SQS task messages and
the task outputs, the error names, the task-token codec and the callback client.
"""
