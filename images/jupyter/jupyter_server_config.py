# JupyterLab settings baked into the jupyter image (/etc/jupyter). The token comes from JUPYTER_TOKEN at
# run time; without it Jupyter makes a random one.
import os

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8888
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/workspace"
# compose runs the container with the host user's ids; when that user is root, Jupyter has to accept it.
c.ServerApp.allow_root = os.getuid() == 0
