#!/usr/bin/env python3
"""Serves the files under a document root over HTTP; the settings come from an INI file."""
import configparser
import http.server
import os
import sys

config = configparser.ConfigParser()
config.read(sys.argv[1])
settings = config["server"]
root = os.path.realpath(settings["root"])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = os.path.realpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
        if path != root and not path.startswith(root + os.sep):
            return self.send_error(403)
        if os.path.isdir(path):
            path = os.path.join(path, settings.get("index", "index.html"))
        try:
            with open(path, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return self.send_error(404)
        except PermissionError:
            return self.send_error(403)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


address = (settings.get("bind", "127.0.0.1"), settings.getint("port"))
print(f"serving {root} on {address[0]}:{address[1]}", flush=True)
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
