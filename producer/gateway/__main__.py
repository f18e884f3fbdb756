"""``python -m producer.gateway``: run the HTTP gateway (``--help`` for options)."""

from producer.gateway.server import main

if __name__ == "__main__":
    main()
