"""The web dashboard (``pip install 'flowline[dashboard]'``, then ``flowline dashboard TARGET``).

Server-rendered pages (Starlette and Jinja templates) with htmx, vendored in ``static/``, for
the live parts: nothing is built and nothing comes from a CDN, so it works offline.

- `app`: the pages, fragments and actions; `diagram`: the pipeline drawn as SVG; `feed`: the
  live events of every process (Server-Sent Events from the event log); `security`:
  authentication, CSRF and the Host check; `server`: binding and serving.
"""

from .app import Dashboard, create_app
from .security import Auth, Csrf
from .server import check_address, serve

__all__ = ["Auth", "Csrf", "Dashboard", "check_address", "create_app", "serve"]
