"""Development tools, not the runtime: the sandbox server, the demo, sample media, local services.

``wsupload sandbox`` and ``wsupload demo`` use them, and so do the tests. The
production image deletes this package after installing (see ``Dockerfile``);
nothing in the runtime imports it.
"""
