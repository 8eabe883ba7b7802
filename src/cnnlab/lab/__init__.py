"""``cnnlab lab``: a local web app over a folder of run folders: runs, live training, exploring a model, reports.

| module | what |
|---|---|
| ``runs`` | find run folders under the root, resolve a name safely, summarize one (status, epochs, accuracy) |
| ``explore`` | the torch work: predictions with every map, Grad-CAM, test images, mistakes, a map's story |
| ``worker`` | the one thread that does the torch work, behind a bounded queue |
| ``api`` | the Starlette app: JSON API, server-sent events, the page |
| ``server`` | run it with uvicorn: host, port, access token |
| ``static/`` | the page: ``index.html``, ``app.js``, ``style.css`` (no library, works offline) |
"""
