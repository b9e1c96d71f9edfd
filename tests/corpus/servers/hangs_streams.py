"""Defect: hangs in-flight requests (vllm-omni#3683's shape). When a worker dies the server turns
unavailable (health and new requests 503) but the requests that worker was serving are never
failed: their connections stay open with no more tokens until the client gives up."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(fail_inflight_on_death=False))
