"""What every bad-input case asserts afterwards: the server is alive, serves a
new client correct data, and the image file is unharmed."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402  (Debian's python3-libnbd, only for /usr/bin/python3)
import qnbd_harness as h  # noqa: E402

SIZE = 32 * h.MiB
DATA = [(0, h.MiB), (8 * h.MiB, 2 * h.MiB)]


class Fixture:
    def __init__(self, tmp, name="disk"):
        self.image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
        self.digest = h.sha256_file(self.image)
        self.server = h.Server(tmp, self.image, name=name)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        return self.server.__exit__(*exc)

    def assert_healthy(self, image_changed=False):
        """A real libnbd client reads real data; the file is as it was."""
        self.server.assert_alive()
        h2 = nbd.NBD()
        h2.connect_uri(self.server.unix_uri())
        assert h2.get_size() == SIZE
        off, length = DATA[1]
        got = h2.pread(256 * 1024, off + 4096)
        assert got == h.pattern(off + 4096, 256 * 1024), "served data is wrong"
        h2.shutdown()
        del h2
        if not image_changed:
            assert h.sha256_file(self.image) == self.digest, "image file was modified"
