"""The pure parts of webhooks, shared by the API and the dispatcher: Standard Webhooks
signing and secrets, subscription filters, which targets are refused (SSRF), and the retry
schedule. Nothing here does I/O except `targets.resolve`, which only asks the resolver."""
