"""Function runner: the binary message is cloudpickle.dumps({"func": f, "args": [...], "kwargs": {...}}).

The return value goes back as a Python result (send_python_result); an exception is printed and sent
back too, so the caller sees what went wrong instead of an empty result list.
"""
import sys
import traceback

import cloudpickle

from lightabaco.actor import get_binary_message, send_python_result

raw = get_binary_message()
if not raw:
    print("py3_func expects a binary message: cloudpickle.dumps({'func': f, 'args': [], 'kwargs': {}})")
    sys.exit(2)
try:
    call = cloudpickle.loads(raw)
    result = call["func"](*call.get("args", []), **call.get("kwargs", {}))
except Exception as exc:  # report any failure of user code as the result
    traceback.print_exc()
    send_python_result(exc)
    sys.exit(1)
print(f"py3_func: returning {type(result).__name__}")
send_python_result(result)
