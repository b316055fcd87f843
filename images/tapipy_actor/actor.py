"""Uses only tapipy.actors: reads the context (and binary message, if any), sends two results."""
from tapipy.actors import get_binary_message, get_context, send_bytes_result, send_python_result

ctx = get_context()
print(f"tapipy context: execution {ctx['execution_id']} message_dict {ctx['message_dict']}")
data = get_binary_message() if ctx["content_type"] == "application/octet-stream" else b""
send_bytes_result(f"tapipy saw {len(data)} binary bytes and message {ctx['raw_message']!r}".encode())
send_python_result({"message_dict": ctx["message_dict"], "actor_id": ctx["actor_id"]})
