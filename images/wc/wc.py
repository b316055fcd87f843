"""Word count: the number of words in the message, printed and sent back as a result."""
from lightabaco.actor import get_context, send_bytes_result

message = get_context()["raw_message"] or ""
count = len(message.split())
print(f"Number of words: {count}")
send_bytes_result(str(count).encode())
