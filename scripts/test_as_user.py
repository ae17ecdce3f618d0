"""make test-images, run as root (CI is root): the image tests run as an unprivileged account, as users run make.

    python scripts/test_as_user.py --user eurosat-user [-- PYTEST_ARGS...]

1. the stand-in root bases are built as root (debootstrap needs root);
2. the account is created when missing (its own HOME, in the group of the engine's socket, no sudo);
3. it gets a clone of this checkout (the same commit, plus the working tree's changes) in its HOME, with this
   checkout's .venv and node_modules shared by hard links (read-only to it: the same installed files, on the
   system's Python of the same minor version, since root's interpreter may sit where the account cannot read);
4. `make test-images` runs there as the account (tests marked `as_root` excepted);
5. every file the account's tests left in its clone and HOME must belong to it: a file owned by anyone else (root,
   written by a container or a root-run step) is listed and fails the run;
6. the tests marked `as_root` (they become other users themselves) run here, as root.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = (".venv", "node_modules")  # placed by this script, shared with this checkout: not the account's to own
# The account gets this environment (the engine, CI's settings, the machine's CA bundles and proxies) less what
# belongs to root: its identity, its HOME and whatever points into it (root's Python, its virtual environments)
ROOTS_OWN = {"HOME", "USER", "LOGNAME", "MAIL", "PWD", "OLDPWD", "SHELL", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def say(message: str) -> None:
    print(f"test-as-user: {message}", flush=True)


def docker_group() -> str:
    socket = Path(os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"))
    return grp.getgrgid(socket.stat().st_gid).gr_name


def account(name: str) -> pwd.struct_passwd:
    """The unprivileged account, created when missing: a HOME of its own, the engine's group, nothing else."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", name], check=True)
        user = pwd.getpwnam(name)
    subprocess.run(["usermod", "--append", "--groups", docker_group(), name], check=True)
    if user.pw_uid == 0:
        raise SystemExit(f"error: --user {name} is root: name an unprivileged account")
    return user


def system_python() -> str:
    """A Python the account can run, of this venv's minor version (so that the shared site-packages load)."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"error: no /usr/bin/{minor} for the account to run the shared .venv with: install {minor}")


def share(source: Path, target: Path) -> None:
    """target as hard links to source's files (seconds for 6 GB), or a copy where they are on two filesystems."""
    if subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True).returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        say(f"{source} and {target} are on two filesystems: copying instead of linking")
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def link_venv(clone: Path) -> None:
    """clone/.venv: this checkout's site-packages by hard links, its own bin/ and pyvenv.cfg on the system Python."""
    source, target = REPO / ".venv", clone / ".venv"
    python = system_python()
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(source)}))
    target.mkdir()
    share(source / "lib", target / "lib")
    if (source / "lib64").is_symlink():
        (target / "lib64").symlink_to("lib")
    (target / "pyvenv.cfg").write_text(
        f"home = {Path(python).parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
    )
    bin_dir = target / "bin"
    bin_dir.mkdir()
    old, new = str(source), str(target)
    for entry in (source / "bin").iterdir():
        made = bin_dir / entry.name
        if entry.name.startswith("python"):
            made.symlink_to(python)
        elif entry.is_symlink():
            made.symlink_to(os.readlink(entry).replace(old, new))
        else:
            data = entry.read_bytes()
            made.write_bytes(data.replace(old.encode(), new.encode()))
            made.chmod(entry.stat().st_mode & 0o777)
    # The editable install points at this checkout's src: the clone's own instead (a new file, not the shared link)
    site = target / purelib.relative_to(source)
    for name in site.glob("__editable__*.pth"):
        text = name.read_text().replace(str(REPO / "src"), str(clone / "src"))
        name.unlink()
        name.write_text(text)
    (target / ".installed").touch()


def make_clone(user: pwd.struct_passwd) -> Path:
    """The account's clone: this commit, the working tree's changes on top, then .venv and node_modules linked."""
    clone = Path(user.pw_dir) / "eurosat"
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
    listed = subprocess.run(["git", "ls-files", "-com", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    for name in sorted(set(filter(None, listed.stdout.decode().split("\0")))):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    deleted = subprocess.run(["git", "ls-files", "-d", "-z"], cwd=REPO, capture_output=True, check=True)
    for name in filter(None, deleted.stdout.decode().split("\0")):
        (clone / name).unlink(missing_ok=True)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(clone)], check=True)
    link_venv(clone)
    if (REPO / "node_modules").is_dir():
        share(REPO / "node_modules", clone / "node_modules")
        (clone / "node_modules" / ".installed").unlink(missing_ok=True)
        (clone / "node_modules" / ".installed").touch()
    return clone


def users_environment() -> dict[str, str]:
    """This environment less root's own and this make's (its flags, the paths it exported into this checkout): what a
    user of this machine has too."""
    root_home = pwd.getpwuid(0).pw_dir
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ROOTS_OWN
        and not name.startswith(("SUDO_", "PYENV", "XDG_", "MAKE", "MFLAGS"))
        and root_home not in value
        and str(REPO) not in value
    }


def foreign_files(user: pwd.struct_passwd, clone: Path) -> list[str]:
    """Every path under the account's HOME (its clone included) that another user owns, the shared links aside."""
    skipped = {clone / name for name in SHARED}
    found = []
    for folder, dirs, files in os.walk(user.pw_dir):
        dirs[:] = [name for name in dirs if Path(folder) / name not in skipped]
        for name in [*dirs, *files]:
            path = Path(folder) / name
            owner = path.lstat().st_uid
            if owner != user.pw_uid:
                found.append(f"{path} (uid {owner})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", required=True, help="the unprivileged account (created when missing)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("error: scripts/test_as_user.py runs as root; as a user, run make test-images")
    env = {**os.environ, "DOCKER": os.environ.get("DOCKER", "docker")}
    subprocess.run(["bash", "scripts/standin-bases.sh"], cwd=REPO, check=True, env=env)
    user = account(args.user)
    clone = make_clone(user)
    say(f"running the image tests as {user.pw_name} (uid {user.pw_uid}, groups {docker_group()}) in {clone}")
    user_env = {**users_environment(), "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    user_env.update(PATH=SYSTEM_PATH, SHELL=user.pw_shell)
    command = ["runuser", "-u", user.pw_name, "--", "env", "-i", *(f"{k}={v}" for k, v in user_env.items()),
               "make", "test-images", f"PYTEST_ARGS=-m 'not as_root' {shlex.join(args.pytest_args)}"]  # fmt: skip
    as_user = subprocess.run(command, cwd=clone).returncode
    foreign = foreign_files(user, clone)
    if foreign:
        print(f"error: the image tests left {len(foreign)} path(s) in {user.pw_dir} that {user.pw_name} does not own:")
        print("\n".join(f"  {line}" for line in foreign[:40]))
    else:
        say(f"every file the tests left in {user.pw_dir} belongs to {user.pw_name}")
    venv_python = str(REPO / ".venv" / "bin" / "python")
    as_root = subprocess.run([venv_python, "-m", "pytest", "tests/images", "-m", "as_root", *args.pytest_args], cwd=REPO)
    # pytest's 5: no test selected (a -k that names none of the root tests)
    return 1 if as_user or foreign or as_root.returncode not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
