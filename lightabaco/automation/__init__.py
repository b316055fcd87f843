"""What reacts to the Abaco lifecycle: events (links to other actors, webhooks with retried delivery)
and cron (firing due actors on the server's ticker).

It subscribes to the lifecycle's event registry (lightabaco.abaco.signals, wired by
`subscriptions.subscribe()` at process start) and calls the lifecycle to send messages.

May import: lightabaco.abaco, lightabaco.sharing, lightabaco.protocol, lightabaco.store, the standard
library. The lifecycle never imports automation, not even inside functions.
"""
