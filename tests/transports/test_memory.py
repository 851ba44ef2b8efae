from relay.testing import TransportCompliance


class TestMemory(TransportCompliance):
    url = "memory://0"
    unreachable_url = "memory://nobody-here"
