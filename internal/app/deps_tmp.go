package app

import (
	_ "github.com/coder/websocket"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/influxdata/influxdb-client-go/v2"
	_ "github.com/influxdata/line-protocol/v2/lineprotocol"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/prometheus/common/model"
	_ "github.com/prometheus/prometheus/tsdb"
	_ "github.com/prometheus/prometheus/tsdb/chunkenc"
	_ "github.com/valyala/fastjson"
	_ "golang.org/x/net/netutil"
	_ "golang.org/x/sync/errgroup"
)
