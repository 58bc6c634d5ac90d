// The native floor for `python -m bench.frontend.floor --native`: what gRPC's C++ server and the JPEG
// decode cost per call, under the same callers as the grpc.aio floor beside it.
//
// A C++ gRPC server (callback API, gRPC's own thread pool) with camserve.v1's Explain and GetModel and
// grpc.health.v1 (the stock default health service). Explain does nothing camserve does: with "decode" it
// decodes the request's JPEG to RGB with libjpeg-turbo (the library simplejpeg wraps in the Python front
// end), then it returns one reply built beforehand, of the size camserve's replies have for the
// stand-in model (5 top predictions, one 7x7 float32 map), as bench/frontend/floor.py's grpc.aio server
// does. Built by `make native-floor` (Debian: libgrpc++-dev, libprotobuf-dev, protobuf-compiler-grpc,
// libturbojpeg0-dev). Usage: floor bare|decode PORT_FILE; writes the port it bound on 127.0.0.1 there.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <turbojpeg.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "camserve/v1/explain.grpc.pb.h"

namespace pb = camserve::v1;

namespace {

constexpr char kModel[] = "m224";
constexpr int kSide = 224;

pb::ExplainResponse CannedReply() {
  pb::ExplainResponse reply;
  reply.set_request_id(std::string(32, '0'));
  reply.set_model(kModel);
  reply.set_model_version(1);
  reply.set_method(pb::GRAD_CAM);
  reply.set_target_layer("standin");
  reply.set_score_kind("logits");
  pb::ClassExplanation* ex = reply.add_explanations();
  ex->set_class_index(3);
  ex->set_label("3");
  ex->set_probability(0.01f);
  ex->set_score(1.5f);
  pb::Tensor* map = ex->mutable_heatmap();
  map->set_dtype(pb::FLOAT32);
  map->add_shape(7);
  map->add_shape(7);
  std::vector<float> values(49);
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  for (float& v : values) v = uniform(gen);
  map->set_data(values.data(), values.size() * sizeof(float));
  for (int i = 0; i < 5; ++i) {
    pb::Prediction* p = reply.add_top_predictions();
    p->set_class_index(i);
    p->set_label(std::to_string(i));
    p->set_probability(0.01f);
  }
  reply.mutable_timing()->set_queue_ms(1.0);
  reply.mutable_timing()->set_compute_ms(2.0);
  reply.mutable_timing()->set_batch_size(4);
  reply.add_original_size(kSide);
  reply.add_original_size(kSide);
  return reply;
}

// Decodes into a per-thread buffer (gRPC runs handlers on its pool's threads); false on bad data.
bool DecodeJpeg(const std::string& data) {
  thread_local tjhandle tj = tjInitDecompress();
  thread_local std::vector<unsigned char> pixels;
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, bytes, data.size(), &width, &height, &subsampling, &colorspace) != 0) {
    return false;
  }
  pixels.resize(static_cast<size_t>(width) * height * 3);
  return tjDecompress2(tj, bytes, data.size(), pixels.data(), width, 0, height, TJPF_RGB, 0) == 0;
}

class FloorService final : public pb::ExplainService::CallbackService {
 public:
  explicit FloorService(bool decode) : decode_(decode), reply_(CannedReply()) {}

  grpc::ServerUnaryReactor* Explain(grpc::CallbackServerContext* context, const pb::ExplainRequest* request,
                                    pb::ExplainResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (decode_ && !DecodeJpeg(request->image().encoded())) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the image is not a JPEG"));
      return reactor;
    }
    *response = reply_;
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context, const pb::GetModelRequest*,
                                     pb::ModelInfo* info) override {
    info->set_name(kModel);
    info->set_version(1);
    info->set_ready(true);
    for (int d : {kSide, kSide, 3}) info->add_input_shape(d);
    info->set_max_batch_size(32);
    info->set_backend("standin");
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const bool decode_;
  const pb::ExplainResponse reply_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[1]) != "bare" && std::string(argv[1]) != "decode")) {
    std::fprintf(stderr, "usage: %s bare|decode PORT_FILE\n", argv[0]);
    return 2;
  }
  const bool decode = std::string(argv[1]) == "decode";
  grpc::EnableDefaultHealthCheckService(true);
  FloorService service(decode);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "cannot listen on 127.0.0.1\n");
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(kModel, true);
  FILE* out = std::fopen(argv[2], "w");
  if (out == nullptr) return 1;
  std::fprintf(out, "%d", port);
  std::fclose(out);
  server->Wait();
  return 0;
}
