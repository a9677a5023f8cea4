"""The web console: the task table and each task's timeline, pushed live from the watch core,
served by the serve process over HTTP (aiohttp, on the gRPC server's event loop). Nothing but
server.py imports this package; it uses store/, watch/, api/ (parsing, errors) and security/."""
