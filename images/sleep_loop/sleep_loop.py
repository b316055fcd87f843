"""Sleep loop: message {"iterations": N, "sleep": seconds}; both optional (defaults 3 and 1)."""
import time

from lightabaco.actor import get_context

params = get_context()["message_dict"]
iterations = int(params.get("iterations", 3))
sleep = float(params.get("sleep", 1))
print(f"Starting sleep loop: {iterations} iterations of {sleep} s", flush=True)
for i in range(iterations):
    print(f"Iteration {i + 1} of {iterations}", flush=True)
    time.sleep(sleep)
print("Sleep loop done.", flush=True)
