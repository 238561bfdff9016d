// naming_peer: the Go side of tests/naming_go.rs. It uses etcd 3.4's own
// naming packages (go.etcd.io/etcd/clientv3/naming/endpoints and .../resolver)
// and gRPC-Go, as a Go or gRPC service would, to check that etcd-sd speaks
// the same naming format.
//
// Usage: naming_peer ETCD_ENDPOINT COMMAND ARGS...
//
//	add TARGET KEY ADDR [METADATA_JSON]  endpoints.Manager.AddEndpoint (metadata
//	                                    kept as written: json.Number for numbers)
//	delete TARGET KEY                   endpoints.Manager.DeleteEndpoint
//	list TARGET                         endpoints.Manager.List, one JSON object
//	watch TARGET SECONDS                NewWatchChannel: "ready", then one JSON
//	                                    line per update, for at most SECONDS
//	serve-health                        (ETCD_ENDPOINT unused) a gRPC health
//	                                    server on 127.0.0.1:0; prints its address;
//	                                    runs until stdin closes
//	dial TARGET                         grpc.Dial("etcd:///TARGET") with
//	                                    round_robin; reads "check N" lines on
//	                                    stdin, answers each with a JSON line
//	                                    {"peers":[...],"errors":E}; ends at EOF
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "naming_peer: "+format+"\n", args...)
	os.Exit(1)
}

func emit(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		die("marshal: %v", err)
	}
	os.Stdout.Write(append(b, '\n'))
}

func connect(endpoint string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		die("connect %s: %v", endpoint, err)
	}
	return c
}

func manager(c *clientv3.Client, target string) endpoints.Manager {
	m, err := endpoints.NewManager(c, target)
	if err != nil {
		die("manager %s: %v", target, err)
	}
	return m
}

func timeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func main() {
	if len(os.Args) < 3 {
		die("usage: naming_peer ETCD_ENDPOINT COMMAND ARGS...")
	}
	endpoint, cmd, args := os.Args[1], os.Args[2], os.Args[3:]
	need := func(n int) {
		if len(args) < n {
			die("%s needs %d arguments", cmd, n)
		}
	}
	switch cmd {
	case "add":
		need(3)
		ep := endpoints.Endpoint{Addr: args[2]}
		if len(args) > 3 {
			d := json.NewDecoder(bytes.NewReader([]byte(args[3])))
			d.UseNumber()
			var md interface{}
			if err := d.Decode(&md); err != nil {
				die("metadata %q: %v", args[3], err)
			}
			ep.Metadata = md
		}
		c := connect(endpoint)
		defer c.Close()
		ctx, cancel := timeout()
		defer cancel()
		if err := manager(c, args[0]).AddEndpoint(ctx, args[1], ep); err != nil {
			die("add: %v", err)
		}
		fmt.Println("ok")
	case "delete":
		need(2)
		c := connect(endpoint)
		defer c.Close()
		ctx, cancel := timeout()
		defer cancel()
		if err := manager(c, args[0]).DeleteEndpoint(ctx, args[1]); err != nil {
			die("delete: %v", err)
		}
		fmt.Println("ok")
	case "list":
		need(1)
		c := connect(endpoint)
		defer c.Close()
		ctx, cancel := timeout()
		defer cancel()
		eps, err := manager(c, args[0]).List(ctx)
		if err != nil {
			die("list: %v", err)
		}
		emit(eps)
	case "watch":
		need(2)
		secs, err := strconv.Atoi(args[1])
		if err != nil {
			die("watch: seconds: %v", err)
		}
		c := connect(endpoint)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
		defer cancel()
		wch, err := manager(c, args[0]).NewWatchChannel(ctx)
		if err != nil {
			die("watch: %v", err)
		}
		fmt.Println("ready")
		for ups := range wch {
			for _, up := range ups {
				op := "add"
				if up.Op == endpoints.Delete {
					op = "delete"
				}
				emit(map[string]interface{}{"op": op, "key": up.Key, "addr": up.Endpoint.Addr, "metadata": up.Endpoint.Metadata})
			}
		}
	case "serve-health":
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			die("listen: %v", err)
		}
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, health.NewServer())
		fmt.Println(lis.Addr().String())
		go func() {
			// Ends when the test closes stdin (or dies).
			bufio.NewReader(os.Stdin).ReadString(0)
			s.Stop()
			os.Exit(0)
		}()
		if err := s.Serve(lis); err != nil {
			die("serve: %v", err)
		}
	case "dial":
		need(1)
		c := connect(endpoint)
		defer c.Close()
		builder, err := resolver.NewBuilder(c)
		if err != nil {
			die("resolver: %v", err)
		}
		conn, err := grpc.Dial("etcd:///"+args[0], grpc.WithResolvers(builder), grpc.WithInsecure(),
			grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
		if err != nil {
			die("dial: %v", err)
		}
		defer conn.Close()
		client := healthpb.NewHealthClient(conn)
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			fields := strings.Fields(in.Text())
			if len(fields) != 2 || fields[0] != "check" {
				die("dial: expected `check N`, got %q", in.Text())
			}
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				die("dial: %v", err)
			}
			peers := []string{}
			errors := 0
			for i := 0; i < n; i++ {
				var p peer.Peer
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
				cancel()
				if err != nil || p.Addr == nil {
					errors++
					continue
				}
				peers = append(peers, p.Addr.String())
			}
			emit(map[string]interface{}{"peers": peers, "errors": errors})
		}
	default:
		die("unknown command %q", cmd)
	}
}
