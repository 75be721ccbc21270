"""Export of an incident's briefings as OASIS Common Alerting Protocol 1.2 messages."""
