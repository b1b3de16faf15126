#!/bin/sh
# Entry point of the redis stand-in (redis.Dockerfile): `redis-server ARGS` and bare `--flag`
# arguments get protected mode off, as in the upstream image; anything else runs as given.
set -e
case "$1" in
  -*) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
