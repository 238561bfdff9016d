// Registers itself, watches its peers with a callback, and calls one of them
// through a retrying round-robin balancer.
//
//   c++ -std=c++17 service.cpp $(pkg-config --cflags --libs etcd_sd) -o service
//   ./service 127.0.0.1:2379 /services/foosvc/ http://10.0.0.1:8080 10
#include <etcd_sd.hpp>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

int main(int argc, char **argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " ENDPOINT PREFIX MY_URL [SECONDS]\n";
    return 2;
  }
  const std::string prefix = argv[2], me = argv[3];
  const int seconds = argc > 4 ? std::atoi(argv[4]) : 10;
  try {
    etcd_sd::Client client({argv[1]});

    // Registered until `registrar` goes out of scope.
    etcd_sd::Registrar registrar(client, prefix + me, me, std::chrono::seconds(1),
                                 std::chrono::seconds(5));
    registrar.register_service();
    std::cout << "registered " << me << " (lease " << registrar.lease_id() << ")\n";

    etcd_sd::Instancer peers(client, prefix);
    std::mutex out;
    peers.on_update([&out](const etcd_sd::Event &ev) {
      std::lock_guard<std::mutex> lock(out);
      std::cout << "peers:";
      for (std::string_view peer : ev) std::cout << ' ' << peer;
      if (auto err = ev.error()) std::cout << " (stale: " << err->what() << ')';
      std::cout << std::endl;
    });

    etcd_sd::Balancer balancer = peers.round_robin();
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < end) {
      balancer.retry(3, std::chrono::seconds(1), [&out](std::string_view peer) {
        std::lock_guard<std::mutex> lock(out);
        std::cout << "calling " << peer << std::endl;
        return true;  // pretend the call succeeded
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  } catch (const etcd_sd::Error &e) {
    std::cerr << "etcd-sd error " << e.status() << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
